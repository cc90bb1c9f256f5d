"""MedalS Slicer logic: everything the module does that needs no Qt and no torch.

- `scene`: MRML volumes ⇄ numpy arrays in (k, j, i) order with their geometry, volume fingerprints.
- `prompts`: prompt text ⇄ structure names, painted segments ⇄ per-prompt masks on the volume's grid.
- `results`: engine labels → one named, coloured segment per prompt, with undo.
- `probability_maps`: engine probability maps → one scalar volume per prompt, updated in place.
- `launcher`: a local engine process on a loopback port, and the engine's set-up in Slicer's own Python.
- `models`: the engine's models, and importing the official weights, through the engine's command line.
- `jobs`: one persistent worker thread that runs engine requests off the GUI thread.
- `client`: the engine's HTTP protocol.

The package name is unique on purpose: Slicer puts every extension's module folders on one `sys.path`.
"""
