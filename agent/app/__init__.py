"""The composition root: one builder (`runtime.Runtime`) and the presets of it that each command runs.

Nothing in sources/, sinks/ or the other domain packages imports this package (an import-linter
contract): it wires them, they do not know it. Importing it is cheap on purpose; the presets import
what their mode needs (the sidecar never loads the ModelArts client).
"""
