from emolens.experiments.layers import main

if __name__ == "__main__":
    main()
