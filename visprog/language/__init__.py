"""The language: grammar and its tokens, parser, syntax tree, value types, module signatures, checker, graph and Eval.

Nothing here runs a module or imports torch.
"""
