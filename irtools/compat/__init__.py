"""Drop-in faces of other tools' APIs on top of irtools.

`irtools.compat.weightwatcher` offers WeightWatcher's `WeightWatcher` class (`analyze`,
`get_details`, `get_summary`, `describe`) with its column names, layer ids and names, so that
`import irtools.compat.weightwatcher as ww` runs code written for WeightWatcher unchanged.
Nothing here is imported by `import irtools`.
"""
