"""TTNN (Tenstorrent) backend of pi0_ttnn_node.

`runtime` opens a real card or, only when asked (`ttnn_emulate: true`), the CPU emulation in
`emulation`; the model modules import `ttnn` and run unchanged on either. Nothing heavy is imported
here so that `import pi0_ttnn_node.ttnn_backend` never pulls in ttnn.
"""
