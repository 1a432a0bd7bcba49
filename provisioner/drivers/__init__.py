"""libcloud compute drivers that ship with the service.

``register()`` makes them known to ``libcloud.compute.providers.get_driver`` under their
provider names: ``"local"`` (nodes that are directories on this machine) and ``"ssh"`` (a static
pool of existing hosts reached over SSH). It is idempotent and safe to call from any thread.
"""

from provisioner.drivers.local import LOCAL_PROVIDER, LocalNodeDriver, register

SSH_PROVIDER = "ssh"  # provisioner.drivers.ssh_pool, imported when first used

__all__ = ["LOCAL_PROVIDER", "LocalNodeDriver", "SSH_PROVIDER", "register"]
