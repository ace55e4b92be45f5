"""The live pipeline: folder watcher, ZeroMQ stages, session store."""
