from emolens.experiments.speakers import main

if __name__ == "__main__":
    raise SystemExit(main())
