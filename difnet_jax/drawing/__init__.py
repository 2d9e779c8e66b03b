"""Drawing: colour-coded label maps and the mechanism-study figures (`visualize`), and the validation pictures
drawn at each evaluation (`pictures`: TensorBoard, `studies.compare`)."""
