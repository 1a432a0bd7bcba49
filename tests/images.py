"""Local container images for tests: nothing is ever pulled from a registry."""
from provisioner.local_image import busybox_image, containers_conf, podman_env

__all__ = ["busybox_image", "containers_conf", "podman_env"]
