from dynamo_cli.app import main

if __name__ == "__main__":  # engines start subprocesses with `spawn`, which re-imports this module
    main()
