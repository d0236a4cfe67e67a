"""The roomstate edge node: wire protocol, room logic, buses, server, client SDK and CLI."""
