from cloudpal.cli.main import main

main()
