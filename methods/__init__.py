"""Neuron-labelling methods: one package per method, each registered in bench.registry.METHODS."""
