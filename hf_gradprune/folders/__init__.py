"""Stage 4, folders: reading saved weights and the class a folder names (``checkpoint``), ``save_pruned`` /
``load_pruned`` / ``check_folder`` (``hub``), and transformers-v4 pruned folders (``v4_compat``). The file shipped
inside every folder, ``modeling_gradprune.py``, sits at the package's bottom instead: the family adapters and
surgery build on it.

May import: the layers below it (``units``, ``modeling_gradprune``, ``architectures``, ``state``, ``scoring``,
``planning``, ``surgery``); not ``oneshot``, which sits beside it, nor anything above (``tests/test_layers.py``).
"""
