"""Latency cost tables measured on a target device (paper section 5.2: C(i, j) = Latency_ij) and
the check that their sums predict whole-network latency.

export.py builds and exports what is timed, runner.py times it on the device, targets.py/ssh.py
drive the device, trtexec.py reads TensorRT's output, profile.py keeps the table and resumes,
boundary.py measures the edge costs of units timed alone, fidelity.py scores the prediction.
"""
