"""The model weights: what svfrd needs and where from (`files`), whether a model folder holds them intact
(`verify`, `lock`), and getting them (`fetch`). Used by `svfrd fetch-models`, `svfrd verify-models`,
`svfrd doctor` and `[engine] name = "auto"`; the layout is described for users in models/README.md.
"""
