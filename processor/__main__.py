from processor.ops.cli import main

main()
