"""The search space and the networks it describes (paper sections 3-4.1, Appendix B): candidates, spaces,
blocks, decoders, the static network and its classifier twin, the published networks, MobileNetV3."""
