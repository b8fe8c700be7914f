"""The node API (edgelab-node-api), its inference services (edgelab-inference) and the
node's model store."""
