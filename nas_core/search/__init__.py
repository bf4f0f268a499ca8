"""The supernet search (paper sections 4.1-4.3): the supernet, Gumbel-softmax sampling, the search loop,
its checkpoint, its data split and its plots."""
