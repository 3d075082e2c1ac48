"""The synthetic world: procedurally generated scenes with per-pixel concept labels, small
targets with planted units, and exporters to the real data formats (DESIGN section 6).

Modules (none is imported here, so ``import bench.synth`` stays light):

- ``concepts``: the concept catalogue (stable label numbers, Broden raw names) and formulas;
- ``world``: seeded scenes, rendering, per-pixel labels;
- ``text``: captions of scenes and images drawn from phrases (Captioner / TextToImage backends);
- ``broden_export``: the world as a Broden directory;
- ``heldout``: held-out concept classes (the offline stand-in for CIFAR);
- ``recipes``, ``models``, ``train``, ``evaluate``, ``targets``: the synthetic targets, their
  planted units, how they are trained and measured, and how the harness loads them.
"""
