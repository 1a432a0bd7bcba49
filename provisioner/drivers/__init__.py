"""libcloud compute drivers that ship with the service.

``register()`` makes them known to ``libcloud.compute.providers.get_driver`` under their
provider names (today: ``"local"``). It is idempotent and safe to call from any thread.
"""

from provisioner.drivers.local import LOCAL_PROVIDER, LocalNodeDriver, register

__all__ = ["LOCAL_PROVIDER", "LocalNodeDriver", "register"]
