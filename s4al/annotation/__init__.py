"""Human-in-the-loop annotation: export the asked regions for Label Studio (or any tool that paints
class-id PNGs) and import the painted answers into the label ledger."""
