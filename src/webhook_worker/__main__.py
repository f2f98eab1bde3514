from webhook_worker.cli import main

main()
