from recsys.cli.main import main

main()
