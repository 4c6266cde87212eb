"""The Streaming DiLoCo outer synchronization: pure math plus one narrow transport interface.

Nothing in this package imports Ray or needs a process group: the engine talks to the network only
through `Transport` (transport.py), so every piece here is tested in one process.
"""
