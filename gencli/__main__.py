from gencli.launch import main

main()
