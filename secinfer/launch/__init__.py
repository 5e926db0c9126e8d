"""Starting runs and evaluations: in this process for the local backends, as separate
party processes on this machine for the secure ones."""
