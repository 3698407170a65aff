from emolens.experiments.corpus_scan import main

if __name__ == "__main__":
    raise SystemExit(main())
