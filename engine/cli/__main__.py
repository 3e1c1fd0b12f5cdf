from mistralrs.engine.cli.main import main

main()
