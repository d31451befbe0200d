from container_mcp.cli import main

main()
