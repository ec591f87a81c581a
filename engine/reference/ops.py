"""Float64 references of BatchNorm2d, ReLU, MaxPool2d, Dropout, softmax cross-entropy and Adam."""
