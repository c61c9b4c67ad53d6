"""Models: what a model spec names, how it is loaded, and the checkpoint format.

``loading`` turns a spec (``cifar:NAME``, ``torchvision:NAME``, ``demo``, a file,
``file.py:Class``) into a `LoadedModel`; ``architectures`` builds named architectures;
``cifar`` holds our CIFAR zoo; ``checkpoint`` writes and rebuilds pruned checkpoints.
"""
from studio.engine.models.architectures import (
                                                CIFAR_INPUT,
                                                build_architecture,
                                                list_cifar_models,
                                                list_torchvision_models,
)
from studio.engine.models.checkpoint import CHECKPOINT_FORMAT, rebuild_from_checkpoint, save_checkpoint
from studio.engine.models.cifar import CIFAR_MODELS
from studio.engine.models.loading import (
                                                LoadedModel,
                                                demo_model_path,
                                                infer_num_classes,
                                                load_model,
                                                torchvision_cache_path,
)

__all__ = ["CHECKPOINT_FORMAT", "CIFAR_INPUT", "CIFAR_MODELS", "LoadedModel", "build_architecture",
           "demo_model_path", "infer_num_classes", "list_cifar_models", "list_torchvision_models",
           "load_model", "rebuild_from_checkpoint", "save_checkpoint", "torchvision_cache_path"]
