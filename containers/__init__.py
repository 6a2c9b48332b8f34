"""The container toolkit: the only code that talks to the Docker engine (find or start it, build or get
images, run one-shot containers, long-running servers with wait strategies and labelled cleanup)."""
