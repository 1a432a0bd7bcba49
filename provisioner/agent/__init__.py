"""The node agent: a stdlib-only package the playbook copies to a node and runs as `python3 -m agent`."""
