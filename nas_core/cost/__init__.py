"""What a network costs (paper sections 4.3 and 5.2): C(i, j) as MACs and parameters (macs.py) or as latency
measured on a target device, and the check that a table's sums predict whole-network latency.

export.py builds and exports what is timed, runner.py times it on the device, targets.py/ssh.py drive the
device and factory.py builds the configured one, trtexec.py reads TensorRT's output, latency.py keeps the
table and resumes, pool.py shares a table among identical devices, fidelity.py scores the prediction.
"""
