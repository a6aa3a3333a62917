from amoeba.cli import main

main()
