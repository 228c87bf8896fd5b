from msgbatch.cli import main

main()
