"""Semi-supervised learning: mean teacher, Confidence Weighting, (Balanced) ClassMix, replay."""
