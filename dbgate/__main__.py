from dbgate.cli import main

main()
