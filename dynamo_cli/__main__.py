from dynamo_cli.app import main

main()
