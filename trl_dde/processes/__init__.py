"""Noise processes (one module each, registered by name). Importing this package registers the built-in ones."""

from .base import NoiseProcess, per_sample
from .ddpm import DDPMProcess
from .flow_matching import FlowMatchingProcess
from .registry import available_processes, get_process_class, register_process

__all__ = ["DDPMProcess", "FlowMatchingProcess", "NoiseProcess", "available_processes", "get_process_class", "per_sample", "register_process"]
