"""ROS-free inference: visible + thermal images in, fused image, registered thermal and flow out.

pipeline      the one entry point (Pipeline, FusionResult): generation -> registration -> fusion
stream        a rig's stream: registration amortised over frames (StreamPipeline)
backends      the same stages on torch (CPU/CUDA, fp16) or onnxruntime
networks      the three networks; layers, filters: their building blocks; models: their weights
align         the global and local affine stages (matches, robust fit, confidence)
warp          the one resampler and flow convention; deform: synthetic misalignment
calibrate     one rig homography from many pairs; camera: intrinsics and undistortion
image, data   normalisation and geometry; finding and reading pairs of files
confidence, errors   the low-confidence warning; the package's error types

Nothing here imports rclpy (test_layout checks it).
"""
