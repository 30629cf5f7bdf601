"""The control plane: routes publishers to origins and viewers to edges; the cluster view."""
