"""Data: Minari trajectories, segment and text streams, dataset collection."""
