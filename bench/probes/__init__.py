"""Probe sets: Broden, ImageFolder (ImageNet val), CIFAR, and the synthetic world."""
