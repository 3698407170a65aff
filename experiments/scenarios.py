from emolens.experiments.scenarios import main

if __name__ == "__main__":
    raise SystemExit(main())
