"""Run reports, figures, prediction on new images and ONNX export."""
