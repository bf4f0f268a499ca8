"""The choice of a network (paper section 5.3.1): architectures sampled through the supernet, Pareto
fronts and reference costs, and their diagrams."""
