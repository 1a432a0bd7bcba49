"""The node agent: a stdlib-only package the playbook copies to a node (as one zip application,
`agent.pyz`) and runs as `python3 agent.pyz --config agent.json`."""
