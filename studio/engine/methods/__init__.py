"""Compression methods: one module per method, behind one small interface.

This is where the methods of the papers the studio builds on live, one module each:
sensitivity analysis and target search, least-squares reconstruction and LASSO channel
selection (He et al., ICCV 2017), compensation-aware pruning (Xie et al., 2021), the
structured + unstructured heuristic (Tian et al., Sensors 2022), low-rank training (TRP),
partition pruning and layer-adaptive progressive pruning (LAPP).

A method turns (model, data, plan, options, cancel token) into a new model. It is a
subclass of `Method` (see ``base``): it declares its options, and its ``run`` is a
generator that yields plain events (``studio.engine.events``) and returns a
`MethodResult` (the new model, the plan it chose, and the numbers the report shows).
The job pipeline (``studio.engine.jobs``) chains methods from a recipe, for example
sparse-train → prune → reconstruct → fine-tune; a search runs trials of such chains.

Adding a method is one module here that defines the class and decorates it with
`register`, one recipe section, and the GUI builds its option form from the declared
`Option` list. Methods may import every building-block wing (models, data, graph,
pruning, training, metrics, export) but never ``studio.engine.jobs``.
"""
from studio.engine.methods import cap_search, rate_pairs, reconstruct, search, sensitivity  # importing a method's module registers it
from studio.engine.methods.base import (
                                        METHODS,
                                        Method,
                                        MethodInput,
                                        MethodResult,
                                        Option,
                                        get_method,
                                        list_methods,
                                        register,
)

__all__ = ["METHODS", "Method", "MethodInput", "MethodResult", "Option", "get_method", "list_methods", "register",
           "cap_search", "rate_pairs", "reconstruct", "search", "sensitivity"]
