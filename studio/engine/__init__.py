"""The Qt-free engine of Compression Studio.

Everything the GUI shows is computed here: model loading, data, the layer graph and its
layout, pruning criteria, pruning plans and surgery, training, metrics, export, recipes
and run folders. Long operations are generators that yield plain-data events (see
`studio.engine.events`) and return their result, so the CLI, the GUI worker and tests
drive them the same way. Nothing in this package may import Qt (a test checks it).
"""
