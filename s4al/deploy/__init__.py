"""Using a trained model elsewhere: prediction on new images and ONNX export."""
